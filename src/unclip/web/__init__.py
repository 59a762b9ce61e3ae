"""unclip.web"""
