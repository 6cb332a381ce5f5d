"""The chaos soak: the swarm under a nemesis for a long time, judged by a checker (README, "Reliability: the chaos soak")."""
