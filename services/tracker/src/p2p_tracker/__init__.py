"""The tracker: a UDP registry of live seeders and the files they hold."""
