"""The device commands (edge-monitor, edge-calibrate, edge-finetune, edge-inspect, edge-report): each
parses its options, calls the library and prints; none imports another command."""
