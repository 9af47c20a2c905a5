"""The HTTP service: request and response, access checks, routes, the page, the CGI gateway, the embedded server."""
