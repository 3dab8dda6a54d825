"""The HTTP face: views, pages, auth, security, urls, static files."""
