pytest_plugins = ["sm_fixtures", "otel_fixtures", "upstream_sm", "servers"]
