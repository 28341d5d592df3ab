"""The web-server class: WSGI applications in domains behind the host's HTTP listener."""
