"""bench accuracy: how right VAP's detections, identities and counts are, against ground truth."""
