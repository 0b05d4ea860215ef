"""The guest's filesystems: mounting them, and reading and writing inside them."""
