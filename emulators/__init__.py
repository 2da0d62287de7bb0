"""Local emulators of provider APIs (loopback servers speaking their documented protocols).

Test tools of ours, not part of the shipped package.
"""
