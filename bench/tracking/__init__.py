"""Helpers of the ``tracker`` bench suite: MOT ground truth turned into noisy detections, the two trackers
run on identical inputs, motmetrics scoring, and a synthetic crowd for the speed rows."""
