"""The seeder: hashes its files into manifests, registers them, serves chunks over TCP."""
