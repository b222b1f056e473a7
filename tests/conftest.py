pytest_plugins = ["sm_fixtures"]
