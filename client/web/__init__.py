"""`python -m client web`: a page for the people who look at marks, and a JSON API beside it.

The app is a gRPC client of the search server like the other client commands (same token
and TLS options); it holds no index and no model. The page and its assets are served by
the app itself (no CDN), so it works offline.
"""
