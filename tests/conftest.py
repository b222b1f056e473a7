# Each module before those importing it (assertions in a module imported earlier are not rewritten).
pytest_plugins = ["upstream_sm", "servers", "sm_fixtures", "otel_fixtures"]
