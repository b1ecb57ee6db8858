"""DICOMweb: STOW-RS, QIDO-RS and WADO-RS (placeholder until the routes land)."""

from fastapi import APIRouter

router = APIRouter(tags=["dicomweb"])
