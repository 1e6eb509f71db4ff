"""Choosing routes: which can serve a request, in what order, and running that plan."""
