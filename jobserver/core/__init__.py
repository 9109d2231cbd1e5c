"""The sans-IO core: job states, events, templates and the job projection.

Nothing in this package imports trio, quart, hypercorn, wsproto or touches a
socket, a file or a clock: plain data in, plain data out. A test walks the
imports to keep it so.
"""
