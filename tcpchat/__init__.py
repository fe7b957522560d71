"""tcpchat: a console chat over TCP, stdlib only.

The package is split the way the protocol is: a sans-I/O core (framing,
protocol, chat) that never touches a socket, and thin shells (server,
client, terminal) that move bytes between the core and the operating system.
"""

__version__ = "1.0.0"
