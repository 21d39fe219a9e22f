"""The tenancy and auth kit both services share: auth, tenancy, errors, paging, db and serving."""
