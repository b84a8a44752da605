"""The engine: the server's round loop (:mod:`rvepfl.fl.server`), the client's round
(:mod:`rvepfl.fl.client`), the in-process dispatcher and its workers, the client store and the
validation of uploads. The maths it runs (aggregation) is in :mod:`rvepfl.maths`."""
