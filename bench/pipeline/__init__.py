"""The whole stack under test for the e2e, churn and soak suites: started as ``vap up`` starts it
(vap_stack.up.start_stack) with one shared simulated RTSP camera, plus what the suites measure it with
(process-tree CPU/RSS, a StreamDetections subscriber, the services' Prometheus counters)."""
