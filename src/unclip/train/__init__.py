"""unclip.train"""
