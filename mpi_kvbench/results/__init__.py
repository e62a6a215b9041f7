"""What a run leaves behind: metric names, the collected data, summary.json and result.h5."""
