"""The data stage: long documents (:mod:`.corpus`), Self-Instruct over them (:mod:`.selfinstruct`), short chat
data (:mod:`.short`) and the mix of both (:mod:`.mix`), all written into ``<run>/data/``."""
