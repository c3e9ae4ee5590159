"""The real world around the controller: RealClock on asyncio, the worker pool, the data-directory
lock, the control socket, and the Service that wires them for `beaver run`."""
