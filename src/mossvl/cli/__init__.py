"""The `mossvl` command line."""
