"""Models: pretrained bodies (text, vision), target embedders, heads and their composition."""
