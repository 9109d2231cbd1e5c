"""The HTTP application (Quart-Trio): native REST API, OpenAPI, metrics, web page.

`app.create_app` builds it; `jobs_views` is the jobs dialect's pure documents, shared
with the event stream (importing this package imports no Quart).
"""
