"""What a kubelet does for a pod on this host: built-in echo servers and workload processes."""
