"""The lake: one interface on a folder and on S3, the image sync, and what needs S3's own API."""
