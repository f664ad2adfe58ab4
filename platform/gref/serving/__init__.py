"""Ray-free pieces of the serving path: request validation/encoding, A/B arm assignment,
per-arm counters and the durable feedback store. The Ray Serve app (serve/app.py) wires them."""
