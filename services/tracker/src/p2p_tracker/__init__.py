"""The tracker: a UDP registry of live holders (seeders, sharing leechers) and the files they hold."""
