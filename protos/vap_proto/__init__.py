"""VAP Python contracts generated from protos/vap/v1 (see vap_common.protogen)."""
