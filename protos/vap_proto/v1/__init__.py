"""Generated from protos/vap/v1 by protos/generate.py: do not edit."""
