"""unclip.data"""
