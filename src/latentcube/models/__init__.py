"""Models: pure ``nn.Module`` autoencoders and fusion layers, with their pydantic configs."""
