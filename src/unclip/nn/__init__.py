"""unclip.nn"""
