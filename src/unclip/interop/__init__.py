"""unclip.interop"""
