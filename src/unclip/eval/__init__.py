"""unclip.eval"""
