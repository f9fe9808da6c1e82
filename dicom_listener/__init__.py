"""The DICOM listener: a durable C-STORE SCP (see ``service.start_listener``)."""
