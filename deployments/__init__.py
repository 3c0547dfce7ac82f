"""Ray Serve deployments: thin wrappers that wire the pure logic in `serve_app` to Serve."""
