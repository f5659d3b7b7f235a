"""The lake and what moves files into it: URIs, the layout of every path, the image sync, S3's own API."""
