"""`labctl trace`, the pure parts: naming the probe's destination, reading `nft monitor
trace` output, turning the events of every namespace into one walk, and printing it.
The kernel side (trace tables, monitors, the probe, conntrack, routes) is labctl/net/nftrace.
"""
