"""The built-in plugins (listed by module name in `runner.plugins.BUILTINS`); they register
through the same hooks a third-party package uses."""
