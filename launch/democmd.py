"""placeholder"""


def register(sub, settings):
    pass
