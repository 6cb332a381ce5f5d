"""The leecher: fetches one file from many seeders at once, verifying every chunk."""
