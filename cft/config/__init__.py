"""Between the command line and the library: config schemas and their checks, Hydra glue (sweep ids,
run-folder resolvers), and the guard that turns a user error into one line and exit status 2."""
