"""unclip.diffusion"""
