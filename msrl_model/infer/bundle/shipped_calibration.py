"""placeholder"""
def shipped_calibration(fingerprint):
    return None
