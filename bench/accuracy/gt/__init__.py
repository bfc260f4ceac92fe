"""The ground truth of vtest-576p25.mp4 and the tool that makes it (README.md beside the data:
bench/data/vtest576/README.md)."""
