"""The transport to upstream hosts: connections, TLS, deadlines and size caps per call."""
