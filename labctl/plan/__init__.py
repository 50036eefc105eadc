"""Pure: ClusterState → Plan (the kernel objects a lab consists of), and its printing."""
